"""The control plane's side of serving: what watches the data plane (gateway/) and steers it, off every request's path.

The health prober (prober.py) and the one rule for mirroring worker rows (route_sync.py) keep a gateway's routing
table in step with the database; a stand-alone gateway's route sync and its load reports (reports.py) stand in for
the database it never reads on a request; the load figures (load.py) sum what every gateway and the job queue see,
and the autoscaler (autoscaler.py) turns them into each endpoint's worker count. The package is named for its plane
rather than for a resource, as reconcilers/ is (one loop per resource kind, converging the runtime on the rows):
these parts serve the gateway wherever it runs, in the server or in a process of its own.
"""
