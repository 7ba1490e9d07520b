//go:build tools

// Package tools records the etcd commands that ../build.sh compiles.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
