{{- define "secretfs.labels" -}}
app.kubernetes.io/name: secretfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
which cannot look), or this release owns it, or it is secretfs's own (our
label) from outside Helm and crds.adopt is set. Otherwise it prints why it is
left alone, which NOTES.txt shows. The Secrets Store CSI Driver's CRD has the
same name; its installer (kubectl apply of controller-gen output, from its
chart's crds/ directory and upgrade hook) marks it with controller-gen's
annotation, also when it applied over ours: applying ours then would undo
theirs on every upgrade, and theirs ours.
*/}}
{{- define "secretfs.crd" -}}
{{- include "secretfs.crdFor" (dict "root" . "name" "secretproviderclasses.secrets-store.csi.x-k8s.io") -}}
{{- end -}}

{{- /*
secretfs.crdFor is secretfs.crd for the CRD named .name (.root is the
chart's context): the same decision for the SecretProviderClassPodStatus CRD.
*/}}
{{- define "secretfs.crdFor" -}}
{{- $name := .name -}}
{{- $root := .root -}}
{{- with $root -}}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" $name -}}
{{- if not .Values.crds.install -}}
crds.install is false
{{- else if not $live -}}
render
{{- else -}}
{{- $annotations := dig "metadata" "annotations" dict $live -}}
{{- $owner := get $annotations "meta.helm.sh/release-name" -}}
{{- $ownerNS := get $annotations "meta.helm.sh/release-namespace" -}}
{{- $ours := eq (dig "metadata" "labels" "app.kubernetes.io/name" "" $live) "secretfs" -}}
{{- if hasKey $annotations "controller-gen.kubebuilder.io/version" -}}
the Secrets Store CSI Driver's installer (controller-gen) wrote it; it serves v1, which secretfs uses
{{- else if and $owner (or (ne $owner .Release.Name) (ne $ownerNS .Release.Namespace)) -}}
Helm release {{ $ownerNS }}/{{ $owner }} owns it
{{- else if $owner -}}
render
{{- else if not $ours -}}
another tool installed it (no Helm release and no app.kubernetes.io/name=secretfs label); it is used as it is
{{- else if .Values.crds.adopt -}}
render
{{- else -}}
no Helm release owns it (kubectl, kustomize or chart 0.1.0's crds/ directory installed it); set crds.adopt=true and run helm upgrade --take-ownership once to let this release manage it
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}
