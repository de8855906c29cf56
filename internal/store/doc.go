// Package store keeps retained messages and persistent sessions durable for the broker.
package store
