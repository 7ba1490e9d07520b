package atomicwriter

import (
	"fmt"
	"io/fs"

	"github.com/secretfs/secretfs/provider"
)

// ValidateFiles checks every mode, and the paths with the one path validator
// of package provider: each path on its own and the set as one tree (no
// duplicates, no file that is also another file's directory).
func ValidateFiles(files []File) error {
	paths := make([]string, len(files))
	for i, f := range files {
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("file %q has mode %v: only permission bits (0000-0777) are allowed", f.Path, f.Mode)
		}
		paths[i] = f.Path
	}
	return provider.ValidatePaths(paths)
}
