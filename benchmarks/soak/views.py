"""The soak's two views. Every read of a request lands on one node (the router keeps a request on the
replica it first read), so the values a read returns are one node's data at one moment."""

from __future__ import annotations

from django.db.models import Max
from django.db.models.expressions import RawSQL
from django.http import HttpRequest, JsonResponse

from .models import Note, Ticker


def write(request: HttpRequest) -> JsonResponse:
    """Store ``s`` in the session (saved by SessionMiddleware, after the view); ``k=row`` also adds a row."""
    seq = int(request.GET["s"])
    request.session["s"] = seq
    if request.GET.get("k") == "row":
        Note.objects.create(client=request.GET["c"], seq=seq)
    return JsonResponse({"ok": True})


def read(request: HttpRequest) -> JsonResponse:
    """The session's ``s``, the client's newest row, the ticker, and the port of the node that answered."""
    session = request.session.get("s")  # loads the session first when the client has one
    newest = Note.objects.filter(client=request.GET.get("c", "")).aggregate(m=Max("seq"))["m"]
    value, port = (
        Ticker.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("value", "port").get(pk=1)
    )
    return JsonResponse({"session": session, "note": newest, "ticker": value, "port": port})
