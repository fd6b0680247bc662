"""Offline evaluation harness: the AMS engine on simulated time over a simulated link.

`core` defines the interface every scheme shares (EvalContext, SchemeResult, Scheme), `link`
the simulated link, `sources` the flights, `schemes` No Customization, One-Time and AMS, and
`runner` the `ams eval` command.
"""
