"""The async job queue's in-process parts, of which the server context holds one each: the wake-ups that spare the
job paths from polling (signals.py) and the group commit of submitted jobs (inserts.py). The queue itself is the
jobs table; the services that submit, take and finish jobs (services/job_requests.py, services/worker_webhooks.py)
use these parts through the context."""
