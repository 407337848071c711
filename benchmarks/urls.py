"""The benchmark's URLs: just the admin, whose dq pages ``benchmarks.measure`` times."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
