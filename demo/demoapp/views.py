"""Two views: post a note, count your notes. Each answer says which server served the read."""

from django.http import JsonResponse

from .models import Note


def post(request):
    request.session["author"] = request.GET["author"]
    Note.objects.create(author=request.GET["author"], body=request.GET.get("body", "hello"))
    return JsonResponse({"ok": True})


def mine(request):
    # one routed read that also reports the port of the server that ran it
    row = Note.objects.raw(
        "SELECT 1 AS id, count(*) AS n, inet_server_port() AS port FROM demoapp_note WHERE author = %s",
        [request.GET["author"]],
    )[0]
    return JsonResponse({"count": row.n, "port": row.port})
