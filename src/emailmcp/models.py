"""Every table, imported in one place so Base.metadata is complete for migrations and the vault."""

from emailmcp.dashboard.models import DashboardSession
from emailmcp.db import Base
from emailmcp.mail.models import DeliveryAttempt, Message
from emailmcp.oauth.models import OAuthState
from emailmcp.tenancy.models import ApiKey, Tenant, TenantSettings
from emailmcp.users.models import EndUser, Mailbox
from emailmcp.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "ApiKey",
    "Base",
    "DashboardSession",
    "DeliveryAttempt",
    "Message",
    "EndUser",
    "Mailbox",
    "OAuthState",
    "Tenant",
    "TenantSettings",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
