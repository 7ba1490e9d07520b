// Package manifests checks the deployment manifests in deploy/ without a
// cluster: they decode strictly into their API types and keep the
// invariants the driver relies on.
package manifests
