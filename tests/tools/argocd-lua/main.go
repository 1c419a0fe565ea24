// Command argocd-lua evaluates an Argo CD resource health script the way Argo CD v3.5.1 evaluates
// a `resource.customizations.health.<group>_<kind>` script from argocd-cm, and prints the health
// Argo CD would show as one JSON line: {"status":"…","message":"…"}. Built by tests/tools/build;
// used by tests/gitops.rs.
//
// What it mirrors (Argo CD util/lua/lua.go VM.ExecuteHealthLua, called through gitops-engine
// health.GetResourceHealth):
//   - the VM is gopher-lua v1.1.2 (Lua 5.1, the version Argo CD pins), not a system Lua;
//   - only the package, base and table libraries are opened, plus Argo CD's "safe os" (which, as
//     in Argo CD, adds no `os` global: only require("os") gives os.time and os.date); no string,
//     math, io or full os library unless -use-open-libs (argocd-cm's
//     resource.customizations.useOpenLibs.<group>_<kind>) is given;
//   - the object is the global `obj`, converted by Argo CD's decodeValue (numbers are Lua numbers,
//     i.e. float64; JSON nulls are nil), with an empty global `actionParams`;
//   - the run is cancelled after 1 second;
//   - the returned table goes through gopher-json and into {status, message}: nil gives an empty
//     health, an invalid status gives Unknown "Lua returned an invalid health status", anything
//     but a table or nil is an error;
//   - an object with metadata.deletionTimestamp (and no hook finalizer) is "Pending deletion"
//     without running the script.
//
// The object is read with encoding/json. Argo CD gets it from client-go as unstructured (int64
// for integral numbers), but decodeValue turns int64 and float64 alike into a Lua float64, so the
// script sees the same values.
//
// Usage: argocd-lua [-use-open-libs] SCRIPT [OBJECT]   (OBJECT: the resource as JSON; stdin
// when absent or "-")
//
// Exit status 0 when Argo CD would compute a health; 1 when its evaluation fails (syntax or
// runtime error, timeout, a non-table result): stdout then has the Unknown health Argo CD shows
// with the error as message, stderr the error; 2 on usage or input errors.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// healthStatus is gitops-engine's health.HealthStatus (pkg/health/health.go), same JSON tags.
type healthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// output always carries both fields, so callers need not tell "absent" from "empty".
type output struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

const (
	incorrectReturnType = "expect %s output from Lua script, not %s"
	invalidHealthStatus = "Lua returned an invalid health status"
	hookFinalizer       = "argocd.argoproj.io/hook-finalizer"
)

func main() {
	useOpenLibs := flag.Bool("use-open-libs", false, "open all gopher-lua libraries (argocd-cm resource.customizations.useOpenLibs)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua [-use-open-libs] SCRIPT [OBJECT.json|-]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 1 || flag.NArg() > 2 {
		flag.Usage()
		os.Exit(2)
	}
	script, obj, err := readInputs(flag.Arg(0), flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua:", err)
		os.Exit(2)
	}
	hs, err := resourceHealth(obj, script, *useOpenLibs)
	code := 0
	if err != nil {
		// What gitops-engine's GetResourceHealth shows for a failing script.
		hs = &healthStatus{Status: "Unknown", Message: err.Error()}
		fmt.Fprintln(os.Stderr, "argocd-lua: health script failed:", err)
		code = 1
	}
	line, _ := json.Marshal(output(*hs))
	fmt.Println(string(line))
	os.Exit(code)
}

func readInputs(scriptPath, objectPath string) (string, map[string]any, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return "", nil, err
	}
	var raw []byte
	if objectPath == "" || objectPath == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(objectPath)
	}
	if err != nil {
		return "", nil, err
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", nil, fmt.Errorf("object is not a JSON object: %w", err)
	}
	return string(script), obj, nil
}

// resourceHealth is the Lua part of gitops-engine's health.GetResourceHealth.
func resourceHealth(obj map[string]any, script string, useOpenLibs bool) (*healthStatus, error) {
	meta, _ := obj["metadata"].(map[string]any)
	if meta["deletionTimestamp"] != nil && !hasHookFinalizer(meta) {
		return &healthStatus{Status: "Progressing", Message: "Pending deletion"}, nil
	}
	return executeHealthLua(obj, script, useOpenLibs)
}

func hasHookFinalizer(meta map[string]any) bool {
	finalizers, _ := meta["finalizers"].([]any)
	for _, f := range finalizers {
		if f == hookFinalizer {
			return true
		}
	}
	return false
}

// runLua is Argo CD's VM.runLuaWithResourceActionParameters with no action parameters.
func runLua(obj map[string]any, script string, useOpenLibs bool) (*lua.LState, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	// As in Argo CD, the caller reads the result off the stack of the closed state (Close only
	// removes temporary files).
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, OpenSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, SafeOsLoader)

	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj))
	err := l.DoString(script)

	// Argo CD strips the stack trace from run errors, since they reach the user.
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = ""
		err = apiErr
	}
	return l, err
}

// executeHealthLua is Argo CD's VM.ExecuteHealthLua.
func executeHealthLua(obj map[string]any, script string, useOpenLibs bool) (*healthStatus, error) {
	l, err := runLua(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	returnValue := l.Get(-1)
	switch returnValue.Type() {
	case lua.LTTable:
		jsonBytes, err := luajson.Encode(returnValue)
		if err != nil {
			return nil, err
		}
		hs := &healthStatus{}
		if err := json.Unmarshal(jsonBytes, hs); err != nil {
			// An empty table encodes as [] : Argo CD treats it as an empty health.
			typeError := &json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[*healthStatus]()}
			if errors.As(err, &typeError) {
				return &healthStatus{}, nil
			}
			return nil, err
		}
		if !isValidHealthStatusCode(hs.Status) {
			return &healthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
		}
		return hs, nil
	case lua.LTNil:
		return &healthStatus{}, nil
	}
	return nil, fmt.Errorf(incorrectReturnType, "table", returnValue.Type().String())
}

func isValidHealthStatusCode(s string) bool {
	switch s {
	case "Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing":
		return true
	}
	return false
}

// decodeValue is Argo CD's, verbatim: how the object becomes the Lua value `obj`.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}

	return lua.LNil
}
