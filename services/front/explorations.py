"""``SearchOptions.exploration``: DistributedSearch's orders of ask and tell (the planner
driver's docstring), by the names its search.json uses. A module of its own so that the job
store, which canonicalises the default, need not import the search machinery."""

EXPLORATIONS = ("batches", "asynchronous", "islands")
DEFAULT_EXPLORATION = EXPLORATIONS[0]  # also what an empty value means
