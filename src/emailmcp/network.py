"""Guards for hosts that users supply, so a key holder cannot aim the service at internal networks."""

import asyncio
import ipaddress
import socket


async def resolve_public_host(host: str, port: int) -> None:
    """Raises ValueError when the host does not resolve, or resolves to a non-public address."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM), timeout=5)
    except (OSError, TimeoutError):
        raise ValueError(f"{host} does not resolve") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global or address.is_multicast:
            raise ValueError(f"{host} resolves to {address}, which is not a public address")
