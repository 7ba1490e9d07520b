package provider

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

type testObject struct {
	ObjectName     string `yaml:"objectName"`
	ObjectAlias    string `yaml:"objectAlias"`
	FilePermission string `yaml:"filePermission"`
	Optional       bool   `yaml:"optional"`
}

func TestDecodeObjects(t *testing.T) {
	azureStyle := "array:\n  - |\n    objectName: a\n    objectAlias: x\n  - |\n    objectName: b\n"
	plain := "- objectName: a\n  objectAlias: x\n- objectName: b\n"
	for name, in := range map[string]string{"azure": azureStyle, "plain": plain} {
		var got []testObject
		if err := DecodeObjects(in, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != 2 || got[0].ObjectName != "a" || got[0].ObjectAlias != "x" || got[1].ObjectName != "b" {
			t.Fatalf("%s: got %+v", name, got)
		}
	}
}

func TestDecodeObjectsKeepsScalarsAsWritten(t *testing.T) {
	var got []testObject
	in := "array:\n  - |\n    objectName: 0123\n    filePermission: 0644\n    optional: true\n"
	if err := DecodeObjects(in, &got); err != nil {
		t.Fatal(err)
	}
	if got[0].FilePermission != "0644" || got[0].ObjectName != "0123" || !got[0].Optional {
		t.Fatalf("got %+v", got[0])
	}
}

func TestDecodeObjectsRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":         "  ",
		"unknown field": "- objectName: a\n  objectNmae: b\n",
		"not a list":    "objectName: a\n",
		"bad item":      "array:\n  - |\n    objectName: [\n",
		"bad yaml":      "- objectName: a\n - x: [",
		"array of maps": "array:\n  - objectName: a\n",
		"bad type":      "- optional: maybe\n",
	} {
		var got []testObject
		err := DecodeObjects(in, &got)
		if CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
		}
	}
}

func FuzzDecodeObjects(f *testing.F) {
	f.Add("array:\n  - |\n    objectName: a\n")
	f.Add("- objectName: a\n")
	f.Add("array: []\n")
	f.Fuzz(func(t *testing.T, in string) {
		var got []testObject
		err := DecodeObjects(in, &got)
		if err != nil && CodeOf(err) != codes.InvalidArgument {
			t.Fatalf("error with code %v: %v", CodeOf(err), err)
		}
	})
}

func TestDecodeObjectsIntoPointers(t *testing.T) {
	var got []*testObject
	if err := DecodeObjects("- objectName: a\n  filePermission: 0600\n", &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ObjectName != "a" || got[0].FilePermission != "0600" {
		t.Fatalf("got %+v", got)
	}
	if err := DecodeObjects("- objectNam: a\n", &got); CodeOf(err) != codes.InvalidArgument {
		t.Fatalf("unknown field through pointers: %v", err)
	}
}

// arrayBomb is an objects parameter in the array form whose 32 strings
// each hold 8,000 values: 850 values outside, 256,000 inside (\x2c turns
// into a comma only when the string is parsed).
func arrayBomb() string {
	var b strings.Builder
	b.WriteString("array:\n  - \"objectName:\\x20x\\noptional:\\x20true\"\n")
	for i := range 32 {
		fmt.Fprintf(&b, "  - \"{objectName:\\x20o%d\\x2cvalue:\\x20[a%s]}\"\n", i, strings.Repeat("\\x2ca", 8000))
	}
	return b.String()
}

// The YAML documents of the array form are bounded together, before any is
// parsed, as the whole parameter is (before, each passed alone and one
// fetch parsed 256,000 values: 414 MiB).
func TestDecodeObjectsBoundsArrayItemsTogether(t *testing.T) {
	var objs []struct {
		ObjectName string `yaml:"objectName"`
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	err := DecodeObjects(arrayBomb(), &objs)
	runtime.ReadMemStats(&m1)
	if CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "its array items hold more than the 32768 YAML values") {
		t.Fatalf("%v, want ResourceExhausted naming the bound", err)
	}
	// The outer document's parse only (its 1.2 MiB of text).
	if n := m1.TotalAlloc - m0.TotalAlloc; n > 32<<20 {
		t.Errorf("refusing it allocated %d bytes", n)
	}
}
