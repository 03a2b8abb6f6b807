"""Gmail over OAuth 2.0: the consent flow, token storage through the vault, refresh, and the credentials the
delivery worker's Gmail transport sends with."""
