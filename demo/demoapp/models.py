from django.db import models


class Note(models.Model):
    author = models.CharField(max_length=50)
    body = models.TextField()

    class Meta:
        app_label = "demoapp"
