"""Guards for hosts that users supply, so a key holder cannot aim the service at internal networks."""

import asyncio
import ipaddress
import socket


async def resolve_public_host(host: str, port: int) -> str:
    """The host's first address; raises ValueError when it does not resolve, or resolves to a non-public address.

    Connect to the address returned rather than to the name: resolving the name again could give another answer."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM), timeout=5)
    except (OSError, TimeoutError):
        raise ValueError(f"{host} does not resolve") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global or address.is_multicast:
            named = host if str(address) == host.strip("[]") else f"{host} resolves to {address}, which"
            raise ValueError(f"{named} is not a public address")
    return str(ipaddress.ip_address(infos[0][4][0]))
