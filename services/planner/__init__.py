"""The Ray side of planning: evaluator actors, the distributed study driver, storage, cluster.

``plan_distributed`` / ``DistributedSearch`` (driver) run the search library's ask/tell loop
(``optimizer.search``) with evaluations on Ray actors (actors, pool); storage opens the Optuna
storage (a journal file by default, PostgreSQL by URL); cluster starts or reaches Ray; outputs
writes search.json, pareto.json and the history picture. Nothing under ``optimizer/`` imports Ray.
"""
