"""Which image pulls a runtime must re-authorize: the host's image cache is shared by every organization, so an
image one of them pulled with its registry credentials must not run for another that its registry would refuse.

Kubernetes' answer to the same problem (the AlwaysPullImages admission plugin) is taken, narrowed to the images
that need it: once a repository has been pulled with credentials in an IDC, every later create of it there pulls
again with the requester's own credentials (none: anonymously), and a pull the registry refuses refuses the
create, although the image is in the cache. Public images and local ones (`localhost/...`, never pulled) keep
the cache as before. The runtime is told through `RunSpec.pull_policy` (Kubernetes' `imagePullPolicy`), so the
decision, which needs the database, stays in the control plane and a Kubernetes runtime hands it on as is.

A create with credentials is recorded before it runs, so a crash between its pull and the record cannot leave a
private image open to everyone (failing closed: a repository recorded for a pull that then failed only costs
its anonymous users a registry round trip).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.exc import IntegrityError

from dockyard.db.models import PrivateImageModel
from dockyard.db.session import Database
from dockyard.runtimes.base import PullPolicy, RunSpec
from dockyard.runtimes.images import parse_reference


async def with_pull_policy(db: Database, idc_id: str, spec: RunSpec) -> RunSpec:
    """`spec` with the pull policy its create in `idc_id` needs: `ALWAYS` when it brings registry credentials
    (the repository is recorded as private first) or its repository was pulled with credentials there before,
    else `IF_NOT_PRESENT`. Call it just before `create`."""
    reference = parse_reference(spec.image)
    if reference.is_local:
        return replace(spec, pull_policy=PullPolicy.IF_NOT_PRESENT)
    key = (idc_id, reference.repository)
    async with db.read() as session:
        recorded = await session.get(PrivateImageModel, key) is not None
    if spec.registry_auth is not None and not recorded:
        try:
            async with db.write() as session:
                session.add(PrivateImageModel(idc_id=idc_id, repository=reference.repository))
        except IntegrityError:
            pass  # recorded meanwhile by a create beside this one
        recorded = True
    return replace(spec, pull_policy=PullPolicy.ALWAYS if recorded else PullPolicy.IF_NOT_PRESENT)
