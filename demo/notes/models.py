"""A notes app: each visitor (a session) keeps notes in their notebook, with tags."""

from django.db import models


class Notebook(models.Model):
    owner = models.CharField(max_length=50, unique=True)
    created = models.DateTimeField(auto_now_add=True)


class Tag(models.Model):
    name = models.CharField(max_length=30, unique=True)


class Note(models.Model):
    notebook = models.ForeignKey(Notebook, on_delete=models.CASCADE, related_name="notes")
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="notes")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
