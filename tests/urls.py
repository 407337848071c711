from django.contrib import admin
from django.urls import path

from dq.views import metrics

urlpatterns = [path("admin/", admin.site.urls), path("dq/metrics", metrics)]
