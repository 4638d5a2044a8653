{{/* Names */}}
{{- define "cargohold.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cargohold.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cargohold.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels; call with (dict "ctx" $ "component" "web") */}}
{{- define "cargohold.labels" -}}
helm.sh/chart: {{ include "cargohold.chart" .ctx }}
{{ include "cargohold.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: cargohold
{{- end }}

{{- define "cargohold.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cargohold.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* The Secret holding the CARGOHOLD_* variables: the chart's, or existingSecret */}}
{{- define "cargohold.envSecretName" -}}
{{- .Values.existingSecret | default (include "cargohold.fullname" .) }}
{{- end }}

{{- define "cargohold.configSecretName" -}}
{{- printf "%s-config" (include "cargohold.fullname" .) }}
{{- end }}

{{- define "cargohold.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cargohold.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cargohold.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Where the config file is mounted, and the flag passing it */}}
{{- define "cargohold.configPath" -}}/etc/cargohold/cargohold.yml{{- end }}

{{/*
The settings file (cargohold.yml): .Values.config plus what the chart decides. Also refuses
configurations that cannot work with several stateless pods.
*/}}
{{- define "cargohold.configFile" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $_ := set $cfg "data_dir" .Values.dataDir }}
{{- $storage := $cfg.storage | default dict }}
{{- $driver := $storage.driver | default "filesystem" }}
{{- if eq $driver "memory" }}
{{- fail "config.storage.driver memory keeps blobs inside one process: use s3, or filesystem on a ReadWriteMany volume (persistence.existingClaim)" }}
{{- else if eq $driver "filesystem" }}
{{- if not .Values.persistence.existingClaim }}
{{- fail "config.storage.driver filesystem needs persistence.existingClaim: a ReadWriteMany PersistentVolumeClaim shared by every pod" }}
{{- end }}
{{- $fs := $storage.filesystem | default dict }}
{{- $_ := set $fs "root" (printf "%s/storage" (trimSuffix "/" .Values.dataDir)) }}
{{- $_ := set $storage "filesystem" $fs }}
{{- $_ := set $cfg "storage" $storage }}
{{- else if eq $driver "s3" }}
{{- if not (($storage.s3 | default dict).bucket) }}
{{- fail "config.storage.driver s3 needs config.storage.s3.bucket" }}
{{- end }}
{{- end }}
{{- if .Values.worker.enabled }}
{{- $gc := $cfg.gc | default dict }}
{{- if not (hasKey $gc "enabled") }}
{{- $_ := set $gc "enabled" false }}
{{- end }}
{{- $_ := set $cfg "gc" $gc }}
{{- $jobs := $cfg.jobs | default dict }}
{{- if not (hasKey $jobs "run_in_web") }}
{{- $_ := set $jobs "run_in_web" false }}
{{- end }}
{{- $_ := set $cfg "jobs" $jobs }}
{{- end }}
{{- if .Values.externalURL }}
{{- $auth := $cfg.auth | default dict }}
{{- if not $auth.realm }}
{{- $_ := set $auth "realm" (printf "%s/v2/auth" (trimSuffix "/" .Values.externalURL)) }}
{{- end }}
{{- $_ := set $cfg "auth" $auth }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
The CARGOHOLD_* variables of the chart's Secret, as a dict. Generated values (secret key,
first admin password) are taken from the Secret already in the cluster when there is one, so
an upgrade keeps them.
*/}}
{{- define "cargohold.secretEnv" -}}
{{- $s := .Values.secrets }}
{{- if not $s.databaseUrl }}
{{- fail "secrets.databaseUrl is required (postgresql://USER:PASSWORD@HOST:5432/DATABASE), or existingSecret" }}
{{- end }}
{{- if hasPrefix "sqlite" $s.databaseUrl }}
{{- fail "secrets.databaseUrl: SQLite lives inside one pod; the chart needs PostgreSQL" }}
{{- end }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "cargohold.fullname" .) | default dict }}
{{- $old := $found.data | default dict }}
{{- $env := dict "CARGOHOLD_DATABASE__URL" $s.databaseUrl }}
{{- $_ := set $env "CARGOHOLD_AUTH__SECRET_KEY" ($s.secretKey | default (get $old "CARGOHOLD_AUTH__SECRET_KEY" | b64dec) | default (randAlphaNum 48)) }}
{{- $_ := set $env "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD" ($s.initialAdminPassword | default (get $old "CARGOHOLD_AUTH__INITIAL_ADMIN_PASSWORD" | b64dec) | default (randAlphaNum 24)) }}
{{- if $s.s3AccessKey }}
{{- $_ := set $env "CARGOHOLD_STORAGE__S3__ACCESS_KEY" $s.s3AccessKey }}
{{- end }}
{{- if $s.s3SecretKey }}
{{- $_ := set $env "CARGOHOLD_STORAGE__S3__SECRET_KEY" $s.s3SecretKey }}
{{- end }}
{{- if $s.redisUrl }}
{{- $_ := set $env "CARGOHOLD_REDIS__URL" $s.redisUrl }}
{{- end }}
{{- if $s.metricsToken }}
{{- $_ := set $env "CARGOHOLD_METRICS__TOKEN" $s.metricsToken }}
{{- end }}
{{- range $key, $value := $s.extraEnv }}
{{- if not (hasPrefix "CARGOHOLD_" $key) }}
{{- fail (printf "secrets.extraEnv: %s is not a CARGOHOLD_* variable" $key) }}
{{- end }}
{{- $_ := set $env $key (toString $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration changes */}}
{{- define "cargohold.configChecksums" -}}
checksum/config: {{ include "cargohold.configFile" . | sha256sum }}
checksum/secrets: {{ printf "%s%s" (toJson .Values.secrets) .Values.existingSecret | sha256sum }}
{{- end }}

{{/* env and volumes shared by the web and worker containers */}}
{{- define "cargohold.envFrom" -}}
- secretRef:
    name: {{ include "cargohold.envSecretName" . }}
{{- end }}

{{- define "cargohold.volumeMounts" -}}
- name: config
  mountPath: /etc/cargohold
  readOnly: true
- name: run
  mountPath: {{ printf "%s/run" (trimSuffix "/" .Values.dataDir) }}
- name: tmp
  mountPath: /tmp
{{- if eq ((.Values.config.storage | default dict).driver | default "filesystem") "filesystem" }}
- name: storage
  mountPath: {{ printf "%s/storage" (trimSuffix "/" .Values.dataDir) }}
{{- end }}
{{- end }}

{{- define "cargohold.volumes" -}}
- name: config
  secret:
    secretName: {{ include "cargohold.configSecretName" . }}
    items:
      - key: cargohold.yml
        path: cargohold.yml
- name: run
  emptyDir:
    # cache and auth generations, the collector's lock, the worker processes' metrics
    # files (prometheus_client multiprocess mode: a few MiB per process)
    sizeLimit: 256Mi
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if eq ((.Values.config.storage | default dict).driver | default "filesystem") "filesystem" }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim }}
{{- end }}
{{- end }}
