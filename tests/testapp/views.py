"""Views for routing tests: each reports the port of the server that answered each read."""

from django.db.models.expressions import RawSQL
from django.http import JsonResponse

from .models import Item


def _port() -> int:
    return int(Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)[0])


def write_then_read(request):
    before = _port()
    Item.objects.create(name="from view")
    return JsonResponse({"before": before, "after": _port()})


async def async_write_then_read(request):
    before = await _aport()
    await Item.objects.acreate(name="from async view")
    return JsonResponse({"before": before, "after": await _aport()})


async def _aport() -> int:
    row = (
        await Item.objects.annotate(port=RawSQL("inet_server_port()", ()))
        .values_list("port", flat=True)
        .afirst()
    )
    return int(row)
