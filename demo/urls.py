from django.urls import path

from demo.demoapp import views

urlpatterns = [path("post/", views.post), path("mine/", views.mine)]
