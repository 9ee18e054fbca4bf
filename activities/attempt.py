"""Who holds a claim: one activity attempt of one workflow run."""

from temporalio import activity


def attempt_token() -> str:
    info = activity.info()
    return f"{info.workflow_run_id}/{info.activity_id}/{info.attempt}"
