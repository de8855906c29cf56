package layers

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/moat-mqtt/moat/"

// allowed lists, for every package of the module, the module packages its
// non-test files may import. A package missing here fails the test, so a
// new package gets its place in the layering when it is added.
var allowed = map[string][]string{
	// Parts: one job each, no sideways imports.
	"internal/acl":   nil,
	"internal/admin": nil,
	// The certificate manager gives the config package's file-permission
	// advice.
	"internal/certs":    {"internal/config"},
	"internal/cluster":  nil,
	"internal/config":   nil,
	"internal/cryptfs":  nil,
	"internal/listen":   {"internal/logging"}, // rate-limited refusal lines
	"internal/logging":  nil,
	"internal/metrics":  nil,
	"internal/memlimit": nil,
	"internal/mosqdb":   nil,
	"internal/passwd":   nil,
	// The store and the auth hook write the acks mochi gets wrong through
	// the mochi package, which matches filters with the ACL's matcher.
	"internal/store":  {"internal/mochi"},
	"internal/mochi":  {"internal/acl"},
	"internal/layers": nil,
	// The limits hook refuses what is over a resource limit; it writes
	// the acks mochi gets wrong and rate-limits its lines like auth.
	"internal/limits": {"internal/logging", "internal/mochi"},
	// The auth hook decides with the password and ACL files, and rate-limits
	// its refusal lines with the logging package.
	"internal/auth": {"internal/acl", "internal/logging", "internal/mochi", "internal/passwd"},
	// The assembler knows every part.
	"internal/broker": {"internal/acl", "internal/admin", "internal/auth", "internal/certs", "internal/cluster", "internal/config",
		"internal/cryptfs", "internal/limits", "internal/listen", "internal/logging", "internal/memlimit", "internal/metrics", "internal/mochi", "internal/passwd", "internal/store"},
	// The command wires the broker and the offline tools.
	"cmd/moat": {"internal/acl", "internal/admin", "internal/broker", "internal/certs", "internal/config",
		"internal/cryptfs", "internal/logging", "internal/memlimit", "internal/mosqdb", "internal/passwd", "internal/store"},
	// Test support and benchmarks.
	"internal/mqtttest":            nil,
	"internal/moattest":            nil,
	"internal/moattest/brokertest": {"internal/broker", "internal/config", "internal/logging", "internal/moattest"},
	"internal/testenv":             nil,
	"internal/certs/acmetest":      nil,
	"internal/cluster/natstest":    nil,
	// Programs the container tests run inside containers.
	"internal/certs/acmetest/cmd/acmetest": {"internal/certs/acmetest"},
	"internal/containertest":               {"internal/testenv"},
	"internal/containertest/cmd/mqttws":    {"internal/mqtttest"},
	"internal/e2e":                         nil,
	"deploy":                               nil,
	"scripts/benchcore":                    {"internal/mqtttest"},
	"scripts/benchpersist":                 {"internal/mqtttest"},
}

// testSupport may be imported by _test.go files and benchmarks only.
var testSupport = []string{"internal/mqtttest", "internal/moattest", "internal/moattest/brokertest", "internal/testenv", "internal/certs/acmetest", "internal/containertest", "internal/cluster/natstest"}

// isSupport reports whether pkg is test support or a program inside it.
func isSupport(pkg string) bool {
	for _, s := range testSupport {
		if pkg == s || strings.HasPrefix(pkg, s+"/") {
			return true
		}
	}
	return false
}

func TestLayering(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	imports := map[string]map[string]bool{} // package -> module imports of its non-test files
	testImports := map[string]map[string]bool{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		into := imports
		if strings.HasSuffix(path, "_test.go") {
			into = testImports
		}
		if into[rel] == nil {
			into[rel] = map[string]bool{}
		}
		for _, is := range f.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			if q, ok := strings.CutPrefix(p, module); ok {
				into[rel][q] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(imports) < 10 {
		t.Fatalf("found only %d packages under %s", len(imports), root)
	}
	for pkg, deps := range imports {
		ok, known := allowed[pkg]
		if !known {
			t.Errorf("%s is not in the layering table: give it its place in internal/layers", pkg)
			continue
		}
		for dep := range deps {
			if slices.Contains(testSupport, dep) && !strings.HasPrefix(pkg, "scripts/") && !isSupport(pkg) {
				t.Errorf("%s imports the test-support package %s outside its tests", pkg, dep)
			} else if !slices.Contains(ok, dep) && !slices.Contains(testSupport, dep) {
				t.Errorf("%s imports %s: not allowed by the layering", pkg, dep)
			}
		}
	}
	for pkg := range testImports {
		if _, known := allowed[pkg]; !known && imports[pkg] == nil {
			t.Errorf("%s (tests only) is not in the layering table", pkg)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
}
