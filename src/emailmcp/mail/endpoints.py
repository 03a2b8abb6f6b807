from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from emailmcp.db import TOKEN_PATTERN
from emailmcp.mail import service
from emailmcp.mail.schemas import (
    EntryPoint,
    MessageContent,
    MessageDetail,
    MessageOut,
    MessagePage,
    SendRequest,
    StatusFilter,
)
from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.tenancy.dependencies import CurrentRuntime, MailContext, Session
from emailmcp.users.endpoints import UserIdPath
from emailmcp.users.schemas import USER_ID_PATTERN

MessageIdPath = Annotated[str, Path(pattern=TOKEN_PATTERN, description="The message's id (msg_...).")]

router = APIRouter(
    tags=["messages"], responses=ERROR_RESPONSES | {409: ERROR_RESPONSES[422] | {"description": "Conflict"}}
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Repeat a send safely: the same key and body return the original message; another body is 409.",
    ),
]


async def _send(
    runtime, ctx, user_id: str, content: MessageContent, idempotency_key: str | None, response: Response
) -> MessageOut:
    result = await runtime.outbox.enqueue(ctx, user_id, content, EntryPoint.rest, idempotency_key)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result.message


@router.post("/v1/users/{user_id}/messages", response_model=MessageOut, status_code=status.HTTP_202_ACCEPTED)
async def send_for_user(
    user_id: UserIdPath,
    body: MessageContent,
    ctx: MailContext,
    runtime: CurrentRuntime,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> MessageOut:
    """Queues a message from the user's mailbox. 202 once it is committed; delivery follows."""
    return await _send(runtime, ctx, user_id, body, idempotency_key, response)


@router.post("/v1/messages", response_model=MessageOut, status_code=status.HTTP_202_ACCEPTED)
async def send(
    body: SendRequest,
    ctx: MailContext,
    runtime: CurrentRuntime,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> MessageOut:
    """The same as POST /v1/users/{user_id}/messages, with `user_id` in the body."""
    content = MessageContent.model_validate(body.model_dump(exclude={"user_id"}))
    return await _send(runtime, ctx, body.user_id, content, idempotency_key, response)


@router.get("/v1/messages", response_model=MessagePage)
async def list_messages(
    ctx: MailContext,
    session: Session,
    user_id: Annotated[str | None, Query(pattern=USER_ID_PATTERN)] = None,
    status: StatusFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
) -> MessagePage:
    """Newest first. `status` takes any status, or `pending` for scheduled, queued and sending."""
    return await service.list_messages(session, ctx, user_id, status, cursor, limit)


@router.get("/v1/messages/{message_id}", response_model=MessageDetail)
async def get_message(message_id: MessageIdPath, ctx: MailContext, session: Session) -> MessageDetail:
    return await service.get_message(session, ctx, message_id)


@router.post("/v1/messages/{message_id}/cancel", response_model=MessageOut)
async def cancel_message(message_id: MessageIdPath, ctx: MailContext, session: Session) -> MessageOut:
    """Cancels a scheduled or queued message; 409 once a worker has started on it."""
    return await service.cancel(session, ctx, message_id)


@router.get(
    "/v1/messages/{message_id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}, "description": "The MIME source"}},
)
async def raw_message(message_id: MessageIdPath, ctx: MailContext, session: Session) -> Response:
    """The MIME source of a message kept by the capture transport."""
    return Response(await service.raw_mime(session, ctx, message_id), media_type="message/rfc822")
