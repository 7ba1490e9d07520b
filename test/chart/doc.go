// Package chart tests the Helm chart in deploy/charts/secretfs with the
// pinned helm (built by `make deps`): lint and render every values file in
// the chart's ci/ directory, decode what it renders strictly into the API
// types, check the invariants the driver relies on, and have a real
// kube-apiserver (test/kubeapi) accept every object in a server-side dry run
// with strict field validation. It also installs, upgrades and uninstalls
// releases there: the CRD is upgraded with the chart, kept on uninstall, and
// left alone when another installation (the Secrets Store CSI Driver) owns it.
//
// The helm binary is $HELM, else the one `make deps` builds into
// ${XDG_CACHE_HOME:-$HOME/.cache}/secretfs/helm-<version>/helm. Without it
// (and outside CI) the tests skip.
package chart
