//go:build tools

// Package tools pins the kwok command that tests/cluster/build compiles.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
