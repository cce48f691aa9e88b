"""The gRPC front: uploads, plan jobs, evaluation, behind auth, health, reflection, metrics.

The API contract is proto/ectplan/v1; ``server.serve`` runs it, ``client.FrontClient`` calls it.
"""
