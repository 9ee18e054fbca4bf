"""Custom search attributes ops filter campaigns by in the Temporal UI.

Registered by `dunning dev`, by the compose stack and by the test environments.
Values are ids and bounded words only.
"""

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.common import SearchAttributeKey

SUBSCRIPTION_ID = SearchAttributeKey.for_keyword("SubscriptionId")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
PROVIDER = SearchAttributeKey.for_keyword("DunningProvider")
STAGE = SearchAttributeKey.for_keyword("DunningStage")
CAMPAIGN_STARTED_AT = SearchAttributeKey.for_datetime("DunningCampaignStartedAt")
# How the campaign ended (recovered | resolved | exhausted | recovered_after_cancel), set
# by the workflow when it records its end (patch outcome-search-attribute); unset while
# it runs, and on campaigns started by code before that patch.
OUTCOME = SearchAttributeKey.for_keyword("DunningOutcome")

ALL = (SUBSCRIPTION_ID, CUSTOMER_ID, PROVIDER, STAGE, CAMPAIGN_STARTED_AT, OUTCOME)

# name -> type name, as `temporal operator search-attribute create --type` spells it
SEARCH_ATTRIBUTES: dict[str, str] = {
    key.name: "Datetime" if key is CAMPAIGN_STARTED_AT else "Keyword" for key in ALL
}

_INDEXED = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME}


async def missing(client, namespace: str) -> list[str]:
    """The engine's attributes the namespace lacks ([] when the server cannot list them,
    like the time-skipping test server). A worker must not run campaigns without them:
    upserting an unknown attribute fails the campaign's workflow task at that point."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    except RPCError as err:
        if err.status in (RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.PERMISSION_DENIED):
            return []  # cannot tell (test server; Temporal Cloud's API keys may not list): go on
        raise
    known = set(listed.custom_attributes) | set(listed.system_attributes)
    return sorted(n for n in SEARCH_ATTRIBUTES if n not in known)


async def register(client, namespace: str) -> None:
    """Register every attribute (idempotent: existing ones are left as they are)."""
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
        existing = set(listed.custom_attributes)
    except RPCError as err:  # the time-skipping test server cannot list, only add
        if err.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        existing = set()
    missing = {n: _INDEXED[t] for n, t in SEARCH_ATTRIBUTES.items() if n not in existing}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
