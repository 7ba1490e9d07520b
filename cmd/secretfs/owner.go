package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"strconv"

	"github.com/secretfs/secretfs/driver"
)

// ownerFlags are -uid, -gid and -mode of the local agent: who owns the
// files (and, for run, who the command runs as). Outside Kubernetes no
// kubelet directory shields a volume, so the default is root's alone:
// directory 0700, files 0600.
type ownerFlags struct {
	uid, gid string
	mode     string
}

func (o *ownerFlags) register(fs *flag.FlagSet, who string) {
	fs.StringVar(&o.uid, "uid", "", who+" (a name or a number); default root")
	fs.StringVar(&o.gid, "gid", "", "group of the files (a name or a number; the directory becomes 0750 for it); default the -uid user's primary group")
	fs.StringVar(&o.mode, "mode", "0600", "mode of files whose object has no filePermission (octal); a class's filePermission still applies")
}

// resolve returns the owner of the volume and the user and group (-1: not
// given) resolved from the flags.
func (o *ownerFlags) resolve() (driver.Owner, int, int, error) {
	owner := driver.LocalOwner
	mode, err := strconv.ParseUint(o.mode, 8, 32)
	if err != nil || mode == 0 || mode > 0o777 {
		return owner, 0, 0, fmt.Errorf("-mode %q is not an octal file mode between 0001 and 0777, like 0600 or 0440", o.mode)
	}
	owner.FileMode = os.FileMode(mode)
	uid, gid, err := lookupIDs(o.uid, o.gid)
	if err != nil {
		return owner, 0, 0, err
	}
	if uid >= 0 {
		owner.UID = uid
	}
	if gid >= 0 {
		owner.GID = gid
	}
	if o.gid != "" {
		owner.RootMode = 0o750
	}
	return owner, uid, gid, nil
}

// lookupIDs resolves -uid and -gid (names or numbers); -1 means not given.
// A user without -gid gets its primary group, never root's group.
func lookupIDs(uidFlag, gidFlag string) (int, int, error) {
	uid, gid := -1, -1
	primary := ""
	if uidFlag != "" {
		if n, err := strconv.ParseUint(uidFlag, 10, 31); err == nil {
			uid = int(n)
			if u, err := user.LookupId(uidFlag); err == nil {
				primary = u.Gid
			}
		} else {
			u, err := user.Lookup(uidFlag)
			if err != nil {
				return 0, 0, fmt.Errorf("-uid %q: no such user", uidFlag)
			}
			uid, _ = strconv.Atoi(u.Uid)
			primary = u.Gid
		}
	}
	switch {
	case gidFlag != "":
		if n, err := strconv.ParseUint(gidFlag, 10, 31); err == nil {
			gid = int(n)
		} else {
			g, err := user.LookupGroup(gidFlag)
			if err != nil {
				return 0, 0, fmt.Errorf("-gid %q: no such group", gidFlag)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	case uid >= 0 && primary != "":
		gid, _ = strconv.Atoi(primary)
	case uid >= 0:
		return 0, 0, errors.New("-uid " + uidFlag + " has no entry in the user database: give -gid too")
	}
	return uid, gid, nil
}
