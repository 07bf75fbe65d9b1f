"""Every image a build makes carries the job's labels from the `LABEL` line dockguard adds after
each `FROM` (sandbox/build.py `labelled`), the final image too: the build passes no `labels`
parameter of its own."""

from __future__ import annotations

import uuid

import aiodocker

from dockguard.models import Limits
from dockguard.sandbox import names
from dockguard.sandbox.build import Builder
from dockguard.sandbox.cleanup import remove_objects
from dockguard.settings import Settings

TWO_STAGES = """FROM busybox:latest AS first
RUN echo one > /one
FROM busybox:latest
COPY --from=first /one /one
USER 1000
CMD ["cat", "/one"]
"""


async def test_every_image_of_a_two_stage_build_carries_the_job_labels(
    docker: aiodocker.Docker,
) -> None:
    job_id = uuid.uuid4().hex
    limits = Limits.from_settings(Settings(_env_file=None, build_network="none")).build
    try:
        outcome = await Builder(docker, 20).build(
            job_id, TWO_STAGES, names.image_tag(job_id, "build"), limits
        )
        final = await docker.images.inspect(outcome.image_id)
        labels = final["Config"]["Labels"] or {}
        assert labels[names.JOB_LABEL] == job_id and labels[names.MANAGED_LABEL] == "true"
        listed = await docker.images.list(all=True, filters=names.label_filter(job_id))
        ids = {image["Id"] for image in listed}
        assert outcome.image_id in ids
        # Both stages' images, not only the final one's: more than one per stage's two steps.
        assert len(ids) >= 4, ids
    finally:
        await remove_objects(docker, names.label_filter(job_id))
    left = await docker.images.list(all=True, filters=names.label_filter(job_id))
    assert left == []
