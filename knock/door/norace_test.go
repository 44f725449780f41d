//go:build !race

package door

const raceEnabled = false
