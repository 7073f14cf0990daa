{{/*
A component's image: [<registry>/]<repository>, then @<digest> when a digest is given, else
:<tag>, the tag defaulting to the chart's appVersion.
Call with (dict "image" .Values.<component>.image "chart" .Chart).
*/}}
{{- define "rota.image" -}}
{{- with .image.registry }}{{ . }}/{{ end }}{{ .image.repository }}
{{- if .image.digest }}@{{ .image.digest }}{{ else }}:{{ .image.tag | default .chart.AppVersion }}{{ end }}
{{- end }}

{{/*
The pod template's metadata of a component: the user's podAnnotations and podLabels, then the
component's own labels (values.schema.json refuses podLabels that would replace them).
Call with (dict "values" .Values.<component> "name" "rota-<component>" "component" "<component>").
*/}}
{{- define "rota.podMetadata" -}}
{{- with .values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
labels:
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  app.kubernetes.io/name: {{ .name }}
  app.kubernetes.io/component: {{ .component }}
  app.kubernetes.io/part-of: rota
{{- end }}

{{/*
Where a component's pods may run and what they pull with: priorityClassName, nodeSelector,
tolerations, affinity, imagePullSecrets, each only when set.
Call with (dict "values" .Values.<component> "root" .Values).
*/}}
{{- define "rota.podScheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
