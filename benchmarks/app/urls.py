from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("read", views.read),
    path("mixed", views.mixed),
    path("info", views.info),
]
