package activities

// StatsFromHeartbeats is Controller.statsFromHeartbeats, for the tests of package activities_test.
var StatsFromHeartbeats = (*Controller).statsFromHeartbeats

// ProbeIntervalFor is ProbeSettings.interval.
var ProbeIntervalFor = ProbeSettings.interval

// WithActivityIDs is withActivityIDs.
var WithActivityIDs = withActivityIDs
