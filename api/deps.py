"""Shared FastAPI dependencies: the process's gateway and its parts, looked up in one place.

Routes take them as parameters (`store: Store`), so none reaches into `app.state` itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from api.gateway import Gateway
from api.hub import Hub
from api.relay import Relay
from api.settings import Settings
from studio.store import ProjectStore


def gateway_of(connection: HTTPConnection) -> Gateway:
    """The gateway of the app serving this request or WebSocket."""
    gateway: Gateway = connection.app.state.gateway
    return gateway


def settings_of(connection: HTTPConnection) -> Settings:
    settings: Settings = connection.app.state.settings
    return settings


def store_of(connection: HTTPConnection) -> ProjectStore:
    return gateway_of(connection).store


def relay_of(connection: HTTPConnection) -> Relay:
    return gateway_of(connection).relay


def hub_of(connection: HTTPConnection) -> Hub:
    return gateway_of(connection).hub


GatewayDep = Annotated[Gateway, Depends(gateway_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
Store = Annotated[ProjectStore, Depends(store_of)]
RelayDep = Annotated[Relay, Depends(relay_of)]
HubDep = Annotated[Hub, Depends(hub_of)]
