#!/bin/sh
echo "remote_coverage_tools: coverage tools are not available in the offline build" >&2
exit 1
