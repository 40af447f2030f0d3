"""What routes depend on, as FastAPI ``Depends`` providers: the settings, the model engine, the job manager
and the metrics of the app serving the request (``create_app`` puts them on ``app.state``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.engine import Engine
from server.jobs.scheduler import JobManager
from server.metrics import Metrics
from server.settings import ServerSettings


async def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
