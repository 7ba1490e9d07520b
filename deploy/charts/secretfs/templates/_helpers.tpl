{{- define "secretfs.labels" -}}
app.kubernetes.io/name: secretfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "secretfs.selector" -}}
app.kubernetes.io/name: secretfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{- define "secretfs.fullname" -}}
{{ .Release.Name }}-node
{{- end }}

{{- define "secretfs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "secretfs.fullname" .) }}
{{- else -}}
{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end -}}
{{- end }}

{{- define "secretfs.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/{{ .Values.driverName }}
{{- end }}

{{- define "secretfs.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "secretfs.providerDirs" -}}
{{- prepend .Values.additionalProvidersDirs .Values.providersDir | uniq | join "," -}}
{{- end }}

{{- define "secretfs.metricsService" -}}
{{- if and .Values.metrics.enabled (or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled) }}true{{ end -}}
{{- end }}

{{/*
secretfs.crd decides about the SecretProviderClass CRD. It prints "render"
when this release should apply it: the CRD is absent (or `helm template`,
which cannot look), or this release owns it, or nobody's Helm release owns
it and crds.adopt is set. Otherwise it prints why it is left alone, which
NOTES.txt shows. A CRD that serves versions this chart does not define was
written by someone else too (the Secrets Store CSI Driver's CRD also serves
v1alpha1): applying ours would take those versions away, so it is left.
*/}}
{{- define "secretfs.crd" -}}
{{- $name := "secretproviderclasses.secrets-store.csi.x-k8s.io" -}}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" $name -}}
{{- if not .Values.crds.install -}}
crds.install is false
{{- else if not $live -}}
render
{{- else -}}
{{- $owner := dig "metadata" "annotations" "meta.helm.sh/release-name" "" $live -}}
{{- $ownerNS := dig "metadata" "annotations" "meta.helm.sh/release-namespace" "" $live -}}
{{- $versions := list -}}
{{- range (dig "spec" "versions" list $live) }}{{ $versions = append $versions .name }}{{ end -}}
{{- $foreign := without $versions "v1" -}}
{{- if $foreign -}}
it also serves {{ join ", " $foreign }}, so another installation (such as the Secrets Store CSI Driver's) writes it
{{- else if and (eq $owner .Release.Name) (eq $ownerNS .Release.Namespace) -}}
render
{{- else if $owner -}}
Helm release {{ $ownerNS }}/{{ $owner }} owns it
{{- else if .Values.crds.adopt -}}
render
{{- else -}}
no Helm release owns it (kubectl, kustomize or a crds/ directory installed it); set crds.adopt=true and run helm upgrade --take-ownership once to let this release manage it
{{- end -}}
{{- end -}}
{{- end }}
