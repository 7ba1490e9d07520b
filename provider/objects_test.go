package provider

import (
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
