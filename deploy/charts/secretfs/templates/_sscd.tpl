{{- /*
secretfs.sscd reads the value names of the Secrets Store CSI Driver's chart,
so that its values file installs secretfs (README "Migrating from the
Secrets Store CSI Driver" has the table). Where secretfs has the same
setting, the SSCD value replaces secretfs's; what has no meaning here is
listed in NOTES (.Values._sscd) or, where installing would do something
else than the file asks, refused. It changes .Values once per render and
outputs nothing: every template that reads a mapped value includes it
first.
*/}}
{{- define "secretfs.sscd" -}}
{{- $v := .Values -}}
{{- if not (hasKey $v "_sscd") -}}
{{- $notes := list -}}
{{- with $v.linux -}}
{{- if and (hasKey . "enabled") (not .enabled) -}}
{{- fail "linux.enabled=false: secretfs is a Linux node driver, so this would install nothing; remove the value" -}}
{{- end -}}
{{- with .image -}}
{{- if and .repository (contains "csi-secrets-store/driver" .repository) -}}
{{- $notes = append $notes (printf "linux.image.repository/tag (%s) name the Secrets Store CSI Driver's image: not used; secretfs runs image.repository (%s)" .repository $v.image.repository) -}}
{{- else -}}
{{- if .repository }}{{ $_ := set $v.image "repository" .repository }}{{ end -}}
{{- if .tag }}{{ $_ := set $v.image "tag" (toString .tag) }}{{ end -}}
{{- if .digest }}{{ $_ := set $v.image "digest" .digest }}{{ end -}}
{{- end -}}
{{- if .pullPolicy }}{{ $_ := set $v.image "pullPolicy" .pullPolicy }}{{ end -}}
{{- end -}}
{{- with .driver }}{{ with .resources }}{{ $_ := set $v "resources" . }}{{ end }}{{ end -}}
{{- $l := . -}}
{{- range $from, $to := dict "affinity" "affinity" "tolerations" "tolerations" "priorityClassName" "priorityClassName" "podAnnotations" "podAnnotations" "podLabels" "podLabels" "volumes" "extraVolumes" "volumeMounts" "extraVolumeMounts" "env" "env" "updateStrategy" "updateStrategy" "kubeletRootDir" "kubeletDir" "providersDir" "providersDir" "additionalProvidersDirs" "additionalProvidersDirs" -}}
{{- if hasKey $l $from -}}
{{- $val := index $l $from -}}
{{- if kindIs "invalid" $val }}{{ $val = ternary (list) (dict) (has $from (list "tolerations" "volumes" "volumeMounts" "env" "additionalProvidersDirs")) }}{{ end -}}
{{- $_ := set $v $to $val -}}
{{- end -}}
{{- end -}}
{{- if hasKey . "nodeSelector" -}}
{{- /* SSCD's DaemonSet always selects Linux nodes besides these. */ -}}
{{- $_ := set $v "nodeSelector" (merge (dict "kubernetes.io/os" "linux") (.nodeSelector | default dict)) -}}
{{- end -}}
{{- with .metricsAddr -}}
{{- $_ := set $v.metrics "port" (atoi (last (splitList ":" .))) -}}
{{- end -}}
{{- with .daemonsetAnnotations -}}
{{- $notes = append $notes "linux.daemonsetAnnotations: not used (secretfs's chart has podAnnotations for the pods, nothing for the DaemonSet object)" -}}
{{- end -}}
{{- if hasKey . "crds" -}}
{{- if and (hasKey .crds "enabled") (not .crds.enabled) }}{{ $_ := set $v.crds "install" false }}{{ end -}}
{{- $notes = append $notes "linux.crds.* other than enabled (the CRD hook job's image, annotations, resources): not used; secretfs's chart installs the CRDs itself (crds.install)" -}}
{{- end -}}
{{- if or (hasKey . "registrarImage") (hasKey . "registrar") (hasKey . "livenessProbeImage") (hasKey . "livenessProbe") -}}
{{- $notes = append $notes "linux.registrar*, linux.livenessProbe*: not used; secretfs registers itself with kubelet (registration: sidecar for the node-driver-registrar) and serves its own health endpoint" -}}
{{- end -}}
{{- end -}}
{{- with $v.windows -}}
{{- if .enabled -}}
{{- $notes = append $notes "windows.enabled=true: secretfs has no Windows node driver; pods on Windows nodes get no secretfs volumes (windows.* is not used)" -}}
{{- end -}}
{{- end -}}
{{- if hasKey $v "logVerbosity" }}{{ $_ := set $v "verbosity" $v.logVerbosity }}{{ end -}}
{{- if hasKey $v "logFormatJSON" }}{{ $_ := set $v "logFormat" (ternary "json" "text" $v.logFormatJSON) }}{{ end -}}
{{- with $v.livenessProbe -}}
{{- if .port }}{{ $_ := set $v.health "port" .port }}{{ end -}}
{{- if hasKey . "logLevel" -}}
{{- $notes = append $notes "livenessProbe.logLevel: not used (the health endpoint is the driver's own; its log follows logVerbosity)" -}}
{{- end -}}
{{- end -}}
{{- if hasKey $v "maxCallRecvMsgSize" }}{{ $_ := set $v "providerMaxMessageSize" $v.maxCallRecvMsgSize }}{{ end -}}
{{- with $v.rbac -}}
{{- if hasKey . "install" }}{{ $_ := set $v.rbac "create" .install }}{{ end -}}
{{- if .pspEnabled }}{{ fail "rbac.pspEnabled=true: PodSecurityPolicy was removed in Kubernetes 1.25; secretfs installs none" }}{{ end -}}
{{- end -}}
{{- if hasKey $v "enableSecretRotation" -}}
{{- if $v.enableSecretRotation -}}
{{- $_ := set $v "rotationInterval" ($v.rotationPollInterval | default "2m") -}}
{{- else -}}
{{- $notes = append $notes (printf "enableSecretRotation=false: secretfs always refreshes mounted content, every rotationInterval (%s); the Secrets Store CSI Driver would not have" $v.rotationInterval) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $v "filteredWatchSecret" -}}
{{- $notes = append $notes "filteredWatchSecret: not used (secretfs watches no nodePublishSecretRef Secrets; it reads them from kubelet on each publish)" -}}
{{- end -}}
{{- if hasKey $v "providerHealthCheck" -}}
{{- $_ := set $v "providerHealthInterval" (ternary (toString ($v.providerHealthCheckInterval | default "2m")) "0" $v.providerHealthCheck) -}}
{{- end -}}
{{- if and (hasKey $v "automountServiceAccountToken") (not $v.automountServiceAccountToken) -}}
{{- $notes = append $notes "automountServiceAccountToken=false: not used; the driver reads classes with its service account's token, so it is mounted" -}}
{{- end -}}
{{- $sscdAuds := list -}}
{{- range $v.tokenRequests -}}
{{- if not (has .audience $v.tokenAudiences) }}{{ $_ := set $v "tokenAudiences" (append $v.tokenAudiences .audience) }}{{ end -}}
{{- $sscdAuds = append $sscdAuds .audience -}}
{{- if .expirationSeconds -}}
{{- $notes = append $notes (printf "tokenRequests audience %q: expirationSeconds is not used (kubelet's default token lifetime applies)" .audience) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $v "_sscdAudiences" $sscdAuds -}}
{{- $_ := set $v "_sscd" $notes -}}
{{- end -}}
{{- end -}}
