"""The built-in notifier, for sites without Prometheus and Alertmanager: the conditions of
deploy/prometheus/dasscod-rules.yml, checked inside the daemon, sent to a Slack-compatible
webhook and/or by e-mail, one message per condition per window."""
