from django.urls import path

from replicarouter.observability.metrics import metrics_view
from tests.testapp import views

urlpatterns = [
    path("write-then-read/", views.write_then_read),
    path("async-write-then-read/", views.async_write_then_read),
    path("sticky/write/", views.sticky_write),
    path("sticky/read/", views.sticky_read),
    path("lock-then-read/", views.lock_then_read),
    path("load/read/", views.load_read),
    path("load/transaction/", views.load_transaction),
    path("load/hold/", views.load_hold),
    path("session/put/", views.session_put),
    path("session/get/", views.session_get),
    path("login/", views.log_in),
    path("whoami/", views.whoami),
    path("sticky/write-then-hook/", views.write_then_hook),
    path("sticky/unseen-write/", views.unseen_write),
    path("raw/write/", views.raw_write),
    path("raw/read/", views.raw_read),
    path("metrics", metrics_view),
]
