"""Argo Workflows for liverseg, generated with Hera from the stage graph (``liverseg.graph.PIPELINE``).

    values.py     what a site may change (the same document as the Helm chart's ``workflows:`` values)
    cluster.py    names of the cluster objects the pods rely on (Secret, ConfigMaps, ServiceAccount)
    pods.py       image, store settings, security context, /tmp: what every pod gets
    templates.py  a graph step as a container template; exit handler; shared workflow spec
    pipeline.py   WorkflowTemplate liverseg-pipeline        infer.py    WorkflowTemplate liverseg-infer
    retrain.py    CronWorkflow liverseg-retrain             monitoring.py  Argo metrics and alert rules
    watch.py      WorkflowTemplate + CronWorkflow liverseg-watch (new archive studies -> liverseg-infer's pod)
    render.py     ``liverseg workflows render``             contract.py    container commands for image tests
    submit.py     ``liverseg submit``                       preflight.py   ``liverseg preflight``
    status.py     ``liverseg record-status`` (the exit handler; no Hera or Kubernetes imports)

Modules that the ``liverseg`` command registers import Hera and the Kubernetes client inside functions, so a
stage image without the ``ops`` extra still starts.
"""
