from django.conf import settings
from django.urls import path
from notes import views

urlpatterns = [
    path("", views.index),
    path("login/", views.login),
    path("notes/", views.notes),
    path("notes/<int:note_id>/", views.note),
    path("report/", views.report),
    path("status/", views.cluster_status),
    path("healthz", views.healthz),
]
if settings.METRICS:
    from replicarouter.observability.metrics import metrics_view

    urlpatterns.append(path("metrics", metrics_view))
