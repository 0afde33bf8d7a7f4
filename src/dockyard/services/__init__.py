"""The logic behind each router, one module per resource.

Services validate against the database (does the template exist in this organization?), record desired
state and answer at once; they never call a runtime (docs/architecture.md).

Every public function takes its arguments in one order, so that a call reads the same in every module:

1. Where it works. `session`, the caller's transaction, for everything that runs inside one (the function
   commits it when it writes). A function that opens and commits transactions of its own takes the server
   `context` instead (job submission, which batches its inserts; `runsync`'s wait; a job's status read, which
   also reads the server's cache of why queues wait; the worker webhooks; reading a runtime's logs), or only the
   `db` where it needs nothing else of the server (start-up, the control loops' bookkeeping). A function that
   touches neither starts with the value it works on.
2. Who acts: the caller's `principal` (its organization is the tenancy check), or the authenticated `worker`
   of a worker webhook. The operator's functions have none: their routers admit the operator alone.
3. What: the object's ids, then the request body, then the options (the `Idempotency-Key`, paging, filters).
4. Last, the parts of the server it uses: the `context`, or only the `settings` or the secret `box` where
   that is all it needs, so a control loop or a test calls it without a server. Wherever a session comes
   first they are keyword-only (`create(session, principal, request, key, context=context)`): the session and
   the context both come from the caller's surroundings, and a call names which is which instead of relying on
   their order.

Why this order: the transaction a write lands in is always the first argument and the tenant it is checked
against always the second, so neither hides in the middle of a call, and a collaborator passed by name is never
taken for the object acted on. dstack's services and the FastAPI full-stack template's CRUD functions put the
session first the same way.

What a router answers, a service returns as the wire model of `dockyard.schemas` that the route declares, so
the router adds nothing to it. Values that never reach the wire are small typed ones: `idempotency.Answer`
(a stored answer, replayed as it was), `jobs.JobColumns` (the columns a job transition sets, applied as keyword
arguments of an update), `schemas.jobs.JobViewBody` (a job's status view as the JSON its webhook is posted),
`worker_webhooks.WorkerPost` (a worker's job-done or stream body, read), `network_storages.Mounters`.
"""
