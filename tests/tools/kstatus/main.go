// Command kstatus prints the kstatus result (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute,
// the library Flux's health checks and `kpt live status` use) of every object in the kubectl JSON
// it reads (a single object or a List, e.g. `kubectl get predictionbatches -o json`), one JSON
// line per object: {"namespace","name","kind","status","message"}.
//
// The JSON is decoded with unstructured.UnstructuredJSONScheme, as client-go does: numbers become
// int64 where they are integral. encoding/json into a map would give float64, which status.Compute
// rejects for fields such as metadata.generation.
//
// Usage: kstatus [FILE]   (stdin when FILE is absent or "-")
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	// Conditions kstatus would add to the object (Reconciling/Stalled), for diagnostics.
	Conditions []status.Condition `json:"conditions,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run() error {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 && os.Args[1] != "-" {
		f, err := os.Open(os.Args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	obj, _, err := unstructured.UnstructuredJSONScheme.Decode(data, nil, nil)
	if err != nil {
		return fmt.Errorf("decode kubectl JSON: %w", err)
	}
	var items []unstructured.Unstructured
	switch o := obj.(type) {
	case *unstructured.UnstructuredList:
		items = o.Items
	case *unstructured.Unstructured:
		items = []unstructured.Unstructured{*o}
	default:
		return fmt.Errorf("unexpected object %T", obj)
	}
	out := json.NewEncoder(os.Stdout)
	for i := range items {
		u := &items[i]
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("status.Compute %s/%s: %w", u.GetNamespace(), u.GetName(), err)
		}
		if err := out.Encode(result{
			Namespace:  u.GetNamespace(),
			Name:       u.GetName(),
			Kind:       u.GetKind(),
			Status:     res.Status.String(),
			Message:    res.Message,
			Conditions: res.Conditions,
		}); err != nil {
			return err
		}
	}
	return nil
}
