package budget

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// unlimited: cgroup v1 reports "no limit" as the largest page-aligned
// int64; anything from 2^62 on is no limit in practice.
const unlimited = 1 << 62

// Default returns the budget for this process: ForMemoryLimit of its
// cgroup's memory limit or, without one, a quarter of the node's RAM. It
// also says where the number came from, for the start-up log.
func Default() (bytes int64, source string, err error) {
	limit, where, err := MemoryLimit("/proc/self/cgroup", "/proc/self/mountinfo")
	if err != nil {
		return 0, "", fmt.Errorf("reading the driver's memory limit from its cgroup: %w (set %s)", err, Flag)
	}
	if limit > 0 {
		b, err := ForMemoryLimit(limit)
		return b, fmt.Sprintf("memory limit %d bytes (%s) minus %d bytes for the driver", limit, where, Headroom(limit)), err
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, "", fmt.Errorf("no memory limit in the driver's cgroup, and the node's RAM is unknown: %w (set %s)", err, Flag)
	}
	ram := int64(si.Totalram) * int64(si.Unit)
	return ram / 4, fmt.Sprintf("no memory limit in the driver's cgroup: a quarter of the node's %d bytes of RAM", ram), nil
}

// MemoryLimit returns the memory limit of the calling process's cgroup (the
// lowest limit on the way up to the root of its hierarchy, since a parent's
// limit binds too), and the file it came from; 0 when there is none. It
// reads the memory controller of cgroup v1 (memory.limit_in_bytes) when the
// process has one, else cgroup v2 (memory.max). procCgroup and mountinfo
// are the /proc/self files.
func MemoryLimit(procCgroup, mountinfo string) (int64, string, error) {
	data, err := os.ReadFile(procCgroup)
	if err != nil {
		return 0, "", err
	}
	cg := parseProcCgroup(data)
	infos, err := mount.ParseMountInfo(mountinfo)
	if err != nil {
		return 0, "", err
	}
	var dir, top, file string
	for _, mi := range infos {
		if cg.hasV1 && mi.FsType == "cgroup" && slices.Contains(mi.SuperOptions, "memory") {
			dir, top, file = within(mi, cg.v1), mi.MountPoint, "memory.limit_in_bytes"
			break
		}
		if !cg.hasV1 && cg.hasV2 && mi.FsType == "cgroup2" && dir == "" {
			dir, top, file = within(mi, cg.v2), mi.MountPoint, "memory.max"
		}
	}
	if dir == "" {
		return 0, "", errors.New("no memory cgroup of this process is mounted")
	}
	var lowest int64
	var where string
	for d := dir; ; d = filepath.Dir(d) {
		raw, err := os.ReadFile(filepath.Join(d, file))
		if err == nil {
			if n, ok := parseLimit(string(raw)); ok && n > 0 && (lowest == 0 || n < lowest) {
				lowest, where = n, filepath.Join(d, file)
			}
		} else if d == dir {
			return 0, "", err
		}
		if d == top || d == "/" || d == "." {
			break
		}
	}
	return lowest, where, nil
}

// within is the directory of cgroup path p under the mount mi (whose root
// may be a sub-tree, as in a container's cgroup namespace).
func within(mi mount.MountInfo, p string) string {
	rel, err := filepath.Rel(mi.Root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return mi.MountPoint
	}
	return filepath.Join(mi.MountPoint, rel)
}

// procCgroup is what /proc/self/cgroup says about memory.
type procCgroup struct {
	v1, v2       string // cgroup paths
	hasV1, hasV2 bool
}

// parseProcCgroup reads lines "ID:controllers:path": the v1 line whose
// controllers include memory, and the v2 line "0::path".
func parseProcCgroup(data []byte) procCgroup {
	var cg procCgroup
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		id, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		ctrls, path, ok := bytes.Cut(rest, []byte(":"))
		if !ok || len(path) == 0 || path[0] != '/' {
			continue
		}
		switch {
		case string(id) == "0" && len(ctrls) == 0:
			cg.v2, cg.hasV2 = string(path), true
		case slices.Contains(strings.Split(string(ctrls), ","), "memory"):
			cg.v1, cg.hasV1 = string(path), true
		}
	}
	return cg
}

// parseLimit reads memory.limit_in_bytes or memory.max: a byte count, or
// "max" (v2) and huge values (v1) for no limit, reported as 0.
func parseLimit(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false
	}
	if n >= unlimited {
		return 0, true
	}
	return int64(n), true
}
