from fastapi import APIRouter

from emailmcp.actions.base import ActionContext
from emailmcp.errors import APIError
from emailmcp.llm import service
from emailmcp.llm.schemas import Capabilities, ExecuteIn, ExecuteOut, InferenceIn, InferenceOut
from emailmcp.mail.schemas import EntryPoint
from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.tenancy.dependencies import ActionMailContext, CurrentRuntime, LlmContext, Session

router = APIRouter(prefix="/llm", tags=["llm"], responses=ERROR_RESPONSES)


@router.get("/capabilities", response_model=Capabilities)
async def capabilities(ctx: LlmContext, runtime: CurrentRuntime) -> Capabilities:
    """What an agent can do here: each action with its description and the JSON Schema of its parameters."""
    return service.capabilities(runtime.planners)


@router.post("/inference", response_model=InferenceOut)
async def inference(body: InferenceIn, ctx: LlmContext, runtime: CurrentRuntime) -> InferenceOut:
    """Turns a prompt into proposed actions. Nothing is done: run a step with /llm/execute-action."""
    return await service.infer(runtime.planners, body)


@router.post("/execute-action", response_model=ExecuteOut)
async def execute_action(
    body: ExecuteIn, llm: LlmContext, mail: ActionMailContext, session: Session, runtime: CurrentRuntime
) -> ExecuteOut:
    """Runs one action for the user, with the same validation, policy and caps as the REST API. Needs X-API-Key
    (llm) and X-MCP-API-Key or Bearer (mail), both of one tenant; `dry_run` only says what would be done."""
    if llm.tenant_id != mail.tenant_id:
        raise APIError(403, "tenant_mismatch", "X-API-Key and X-MCP-API-Key belong to different tenants.")
    ctx = ActionContext(runtime, session, mail, body.user_id, EntryPoint.llm, body.dry_run)
    result = await service.execute(ctx, body.action_type, body.parameters)
    return ExecuteOut(action=body.action_type, dry_run=body.dry_run, result=result)
