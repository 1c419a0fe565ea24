// Command dockerfile-lint runs BuildKit's Dockerfile checks (github.com/moby/buildkit, the rules
// behind `docker build --check`) on a Dockerfile without a Docker engine or a registry, and fails
// on any warning.
//
// It calls dockerfile2llb.DockerfileLint, exactly what the BuildKit frontend runs for `--check`,
// with every rule enabled (experimental ones too) unless the Dockerfile's own `# check=`
// directive says otherwise; a directive that skips rules is refused. Two things a real build
// would fetch are replaced:
//   - base-image metadata: an offline resolver answers every FROM with a plain linux/amd64 image
//     config (so the platform and variable checks run; no registry is contacted);
//   - the build context: BuildKit checks COPY/ADD sources against .dockerignore (CopyIgnoredFile)
//     only with a build client, so this program does that itself, and also fails a COPY/ADD whose
//     source does not exist in the context (the build would fail on it).
//
// Usage: dockerfile-lint [-context DIR] [-platform linux/amd64] DOCKERFILE
// Prints one line per finding ("Dockerfile:LINE RuleName: detail (url)"); exit 1 on any finding.
//
// Usage: dockerfile-lint -list-context DIR
// Prints the files of the build context DIR that its .dockerignore lets through, one relative
// path a line, sorted: what a build would send, matched with BuildKit's own pattern matcher.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/platforms"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// offlineResolver answers every base image with a minimal config of the target platform.
type offlineResolver struct{ platform ocispecs.Platform }

func (r offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := map[string]any{
		"architecture": r.platform.Architecture,
		"os":           r.platform.OS,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest.FromString(ref).String()}},
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
	}
	dt, err := json.Marshal(cfg)
	return ref, "", dt, err
}

type finding struct {
	line int
	rule string
	text string
}

func main() {
	contextDir := flag.String("context", "", "build context (default: the Dockerfile's directory)")
	platform := flag.String("platform", "linux/amd64", "target platform")
	listContext := flag.String("list-context", "", "print the files of this build context that .dockerignore lets through, and exit")
	flag.Parse()
	if *listContext != "" {
		files, err := contextFiles(*listContext)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", *listContext, err)
			os.Exit(1)
		}
		for _, f := range files {
			fmt.Println(f)
		}
		return
	}
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint [-context DIR] [-platform os/arch] DOCKERFILE")
		os.Exit(2)
	}
	path := flag.Arg(0)
	if *contextDir == "" {
		*contextDir = filepath.Dir(path)
	}
	findings, err := lint(path, *contextDir, *platform)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		os.Exit(1)
	}
	sort.SliceStable(findings, func(i, j int) bool { return findings[i].line < findings[j].line })
	for _, f := range findings {
		fmt.Printf("%s:%d %s: %s\n", filepath.Base(path), f.line, f.rule, f.text)
	}
	if len(findings) > 0 {
		fmt.Fprintf(os.Stderr, "%d finding(s) in %s\n", len(findings), path)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "%s: no BuildKit check warnings\n", path)
}

func lint(path, contextDir, platform string) ([]finding, error) {
	dt, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	plat, err := platforms.Parse(platform)
	if err != nil {
		return nil, err
	}

	// Enable every rule, experimental ones included, unless the file configures the checks
	// itself; refuse a configuration that turns rules off.
	src := dt
	offset := 0
	directive, _, _, _ := parser.ParseDirective("check", dt)
	if directive == "" {
		src = append([]byte("# check=experimental=all\n"), dt...)
		offset = 1
	} else if cfg, err := linter.ParseLintOptions(directive); err != nil {
		return nil, err
	} else if cfg.SkipAll || len(cfg.SkipRules) > 0 {
		return nil, fmt.Errorf("the check directive %q skips rules; fix the findings instead", directive)
	}

	var findings []finding
	sm := llb.NewSourceMap(nil, filepath.Base(path), "Dockerfile", src)
	sm.Definition = &llb.Definition{} // what the frontend would fill with the context's LLB
	res, err := dockerfile2llb.DockerfileLint(context.Background(), src, dockerfile2llb.ConvertOpt{
		SourceMap:      sm,
		TargetPlatform: &plat,
		MetaResolver:   offlineResolver{platform: plat},
	})
	if err != nil {
		return nil, err
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line) - offset
		}
		findings = append(findings, finding{line, w.RuleName, fmt.Sprintf("%s (%s)", w.Detail, w.URL)})
	}
	if res.Error != nil {
		line := 0
		if len(res.Error.Location.Ranges) > 0 {
			line = int(res.Error.Location.Ranges[0].Start.Line) - offset
		}
		findings = append(findings, finding{line, "BuildError", res.Error.Message})
	}

	ctxFindings, err := checkContext(dt, contextDir)
	if err != nil {
		return nil, err
	}
	return append(findings, ctxFindings...), nil
}

// dockerignore reads the patterns of contextDir/.dockerignore (none when it has none).
func dockerignore(contextDir string) (*patternmatcher.PatternMatcher, error) {
	var patterns []string
	if f, err := os.Open(filepath.Join(contextDir, ".dockerignore")); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf(".dockerignore: %w", err)
		}
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	return pm, nil
}

// contextFiles lists the regular files (and symlinks) under contextDir that .dockerignore does
// not exclude, as BuildKit decides it (a path is excluded when it or a parent matches, the last
// matching pattern winning). An excluded directory is not descended into unless an exception
// ("!pattern") could select something inside it; exceptions with a wildcard in a directory part
// are always assumed to, so the listing is exact, only slower.
func contextFiles(contextDir string) ([]string, error) {
	pm, err := dockerignore(contextDir)
	if err != nil {
		return nil, err
	}
	var exceptions []string
	for _, p := range pm.Patterns() {
		if p.Exclusion() {
			exceptions = append(exceptions, p.String())
		}
	}
	mayReinclude := func(dir string) bool {
		for _, e := range exceptions {
			if strings.HasPrefix(e, dir+"/") {
				return true
			}
			if i := strings.LastIndex(e, "/"); i >= 0 && strings.ContainsAny(e[:i], "*?[\\") {
				return true
			}
		}
		return false
	}
	var files []string
	err = filepath.WalkDir(contextDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(contextDir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if excluded && !mayReinclude(rel) {
				return filepath.SkipDir
			}
			return nil
		}
		if !excluded {
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

// checkContext: every COPY/ADD source taken from the build context exists there and is not
// excluded by .dockerignore (BuildKit's CopyIgnoredFile, plus "file not found").
func checkContext(dt []byte, contextDir string) ([]finding, error) {
	pm, err := dockerignore(contextDir)
	if err != nil {
		return nil, err
	}
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return nil, err
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		return nil, err
	}
	var findings []finding
	for _, st := range stages {
		for _, cmd := range st.Commands {
			var srcs []string
			var from, name string
			switch c := cmd.(type) {
			case *instructions.CopyCommand:
				srcs, from, name = c.SourcePaths, c.From, "COPY"
			case *instructions.AddCommand:
				srcs, name = c.SourcePaths, "ADD"
			default:
				continue
			}
			if from != "" {
				continue
			}
			line := 0
			if loc := cmd.Location(); len(loc) > 0 {
				line = loc[0].Start.Line
			}
			for _, s := range srcs {
				if strings.Contains(s, "://") || strings.HasPrefix(s, "git@") {
					continue
				}
				f, err := checkSource(pm, contextDir, s)
				if err != nil {
					return nil, err
				}
				if f != "" {
					findings = append(findings, finding{line, "CopyIgnoredFile", fmt.Sprintf("%s source %q %s", name, s, f)})
				}
			}
		}
	}
	return findings, nil
}

// checkSource returns why src cannot be sent with the context, or "" when it can.
func checkSource(pm *patternmatcher.PatternMatcher, contextDir, src string) (string, error) {
	rel := filepath.Clean(strings.TrimPrefix(src, "/"))
	matches, err := filepath.Glob(filepath.Join(contextDir, rel))
	if err != nil {
		return "", err
	}
	if len(matches) == 0 {
		return "does not exist in the build context", nil
	}
	sent := 0
	for _, m := range matches {
		err := filepath.Walk(m, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return err
			}
			r, err := filepath.Rel(contextDir, p)
			if err != nil {
				return err
			}
			ignored, err := pm.MatchesOrParentMatches(filepath.ToSlash(r))
			if err != nil {
				return err
			}
			if !ignored {
				sent++
			}
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	if sent == 0 {
		return "is excluded by .dockerignore", nil
	}
	return "", nil
}
