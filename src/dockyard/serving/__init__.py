"""How the servers meet the network: the HTTP protocol under uvicorn (protocol.py) and the front that sends each
request to the gateway or the API (front.py), with the speed-ups of the serving path, each behind a setting that is
on by default (`head_with_body`, `lean_job_routes`, `gc_freeze`). The composition roots (app.py, gateway_app.py)
build them with their collaborators; `dockyard server` and `dockyard gateway` (cli/server.py) run them."""
