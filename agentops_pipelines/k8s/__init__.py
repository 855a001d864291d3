"""Kubernetes serving, as plain code: the Dagster resource (resources/kubernetes_deployer.py) is a
thin shell over these modules.

- :mod:`.naming`: object names, labels, annotations, namespaces.
- :mod:`.render`: the manifests one agent needs in one environment, and the RBAC (pure).
- :mod:`.plan`: what to apply, wait for and delete to get from the live objects to the desired
  ones; rollout status read from live objects (pure).
- :mod:`.stats`: per-role serving stats from Prometheus (the PromQL and how answers are read).
"""
